"""Hugging Face Hub publishing: timm-format repos with model cards built from results files."""
from .card import CARD_TEMPLATE, NO_RESULTS, card_results, render_card
from .publish import (
    REPO_FILES,
    HubInfo,
    PushResult,
    build_model,
    check_repo_id,
    info,
    pull,
    push,
    resolve_token,
    upload_folder,
    write_repo_folder,
)
from .results import CARD_KINDS, ResultsFile, load_results, select_entry

__all__ = [
    "CARD_TEMPLATE", "NO_RESULTS", "card_results", "render_card",
    "REPO_FILES", "HubInfo", "PushResult", "build_model", "check_repo_id", "info", "pull", "push",
    "resolve_token", "upload_folder", "write_repo_folder",
    "CARD_KINDS", "ResultsFile", "load_results", "select_entry",
]
