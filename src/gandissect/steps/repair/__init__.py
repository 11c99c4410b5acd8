"""Repair (GAN Dissection, step 5): find the units that draw artifacts, switch them off, and prove with FD (and
KID, precision/recall, the world's rules) that the repair beats chance. See ``run`` for the run, ``routes`` for the
ways to choose the units, ``learned`` for the learned repair, ``evaluation`` for the proof."""

from gandissect.steps.repair.run import RepairPlan, check_signal, plan_repair, run_repair, summary

__all__ = ["RepairPlan", "check_signal", "plan_repair", "run_repair", "summary"]
