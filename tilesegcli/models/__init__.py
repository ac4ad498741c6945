"""Model zoo data: one JSON card per named model, plus small bundled weights."""
