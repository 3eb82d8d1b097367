"""The CLI's commands, one module per app (``timm_xbn.cli`` holds the apps and registers them)."""
