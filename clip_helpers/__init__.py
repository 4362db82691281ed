"""clip_helpers: the tested core of clip-kit."""
