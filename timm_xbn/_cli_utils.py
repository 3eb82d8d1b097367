"""Former home of the CLI helpers, now in ``timm_xbn.commands.options``; kept so existing imports work."""
from .commands.options import check_checkpoint_file, handle_errors, parse_json_kwargs, reword

__all__ = ["check_checkpoint_file", "handle_errors", "parse_json_kwargs", "reword"]
