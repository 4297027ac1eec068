"""Where the files this project ships live: data/ (the default model, sample photos, colour profiles)."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
COLOUR_PROFILES = DATA_DIR / "colour-profiles"
