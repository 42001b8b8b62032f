"""mmrag."""
