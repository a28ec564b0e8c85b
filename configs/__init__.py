"""Model configs shipped with FlashCore (config.json only: served with dummy weights)."""
