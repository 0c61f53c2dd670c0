"""The base class of every config section (kept apart so stage configs can import it without cycles)."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors (typos never pass silently); assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def folder_name(name: str) -> str:
    """A config name that becomes a folder under the run's storage: no path tricks."""
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError("must be a non-empty name without slashes, spaces or a leading dot (it names a folder)")
    return name
