"""Default paths, in one place: the shipped checkpoints and the experiment configs, relative to the repository
root (the commands are run from there, as ``make demo`` does)."""

SCENE_SEGMENTER = "checkpoints/scene_segmenter.safetensors"
SCENE_GAN_GENERATOR = "checkpoints/scene_gan_generator.safetensors"
SCENE_GAN_DISCRIMINATOR = "checkpoints/scene_gan_discriminator.safetensors"
SCENE_GAN_ARTIFACT_SEGMENTER = "checkpoints/scene_gan_artifact_segmenter.safetensors"

DEMO_CONFIG = "experiments/scenes/demo.yaml"
DISSECT_CONFIG = "experiments/scenes/dissect.yaml"
ACE_CONFIG = "experiments/scenes/ace.yaml"
REPAIR_CONFIG = "experiments/scenes/repair.yaml"

WORLD_VARIANTS = ("default", "town", "wild")  # the built-in world's variants (data/scenes.py VARIANTS)
REAL_SEED = 12345  # world seed of the held-out real scenes every evaluation compares with
PAINT_CONCEPTS = "checkpoints/scene_gan_paint_concepts.json"
PAINT_CONFIG = "experiments/scenes/paint.yaml"
PAINT_PREPARE_CONFIG = "experiments/scenes/paint_prepare.yaml"
