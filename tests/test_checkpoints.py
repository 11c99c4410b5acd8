import hashlib
import json

from .conftest import REPO


def test_every_shipped_checkpoint_is_in_the_manifest_with_its_sha256():
    manifest = json.loads((REPO / "checkpoints" / "MANIFEST.json").read_text())
    shipped = sorted(p.name for p in (REPO / "checkpoints").glob("*.safetensors"))
    assert shipped and sorted(manifest) == shipped
    for name, entry in manifest.items():
        digest = hashlib.sha256((REPO / "checkpoints" / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{name} does not match its manifest entry"
        assert (REPO / entry["config"]).is_file()
        for field in ("command", "steps", "wall_time_s", "machine", "quality"):
            assert field in entry, f"{name}: manifest entry lacks {field}"
