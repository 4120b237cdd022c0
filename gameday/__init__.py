"""Game day: a local fleet under simulated players while an operator's faults hit it (`scripts/gameday`)."""
