"""Models: loading policies, teacher-forced scoring, exact mixed decoding, reward sources (torch; no Ray)."""
