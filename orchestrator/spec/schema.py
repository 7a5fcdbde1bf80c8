"""What ``caviar schema`` prints: the spec's JSON Schema, or the parameters a trainable takes.

Both come from the models, so the schema, the docs and editors' completion have one source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.sweep import SweepSpec
from orchestrator.spec.yaml_text import load_yaml

# The lookup's advice for a spec's trainable; `caviar schema` without --spec took no spec.
_BESIDE_THE_SPEC = "put it beside the spec or install its package"
_NAME_THE_FOLDER = (
    "run caviar schema in the module's folder, name that folder or its spec with --spec PATH, "
    "or install its package"
)


def schema_for(reference: str | None = None, spec: Path | None = None) -> dict[str, Any]:
    """What ``caviar schema`` prints: the spec's JSON Schema, or a trainable's parameters.

    ``spec`` (a spec file or a folder) is where an import-path trainable is looked up first,
    instead of the working folder; a spec file also names the trainable when ``reference``
    does not. Only its ``trainable`` is read, so a spec still being written works too.
    """
    if spec is None:
        return json_schema() if reference is None else trainable_schema(reference)
    if spec.is_dir():
        if reference is None:
            raise _spec_option_error(
                f"{spec} is a folder: say which trainable in it with --trainable NAME, "
                "or name the spec file instead"
            )
        return trainable_schema(reference, spec, spec_given=True)
    if not spec.is_file():
        raise _spec_option_error(
            f"{spec} does not exist; pass a spec file or the folder of the trainable's module"
        )
    if reference is None:
        reference = _trainable_named(spec)
    return trainable_schema(reference, spec.resolve().parent, spec_given=True)


def _spec_option_error(message: str) -> SpecError:
    return SpecError([Problem("--spec", message)])


def _trainable_named(spec: Path) -> str:
    """The spec's ``trainable`` (its default when it names none), read without validating."""
    try:
        data = load_yaml(spec.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None  # caviar validate says what is wrong with it; only the name is wanted here
    if not isinstance(data, dict):
        raise _spec_option_error(
            f"{spec} is not a readable spec (caviar validate says why); "
            "or name the trainable with --trainable NAME"
        )
    return str(data.get("trainable") or SweepSpec.model_fields["trainable"].default)


def trainable_schema(
    reference: str, search_dir: Path | None = None, spec_given: bool = False
) -> dict[str, Any]:
    """The JSON Schema of the parameters a trainable takes, with the metrics it reports;
    ``spec_given``: ``search_dir`` is a spec's folder (else the advice names ``--spec``)."""
    from trainables import UnknownTrainableError, get_trainable

    try:
        definition = get_trainable(reference, [search_dir or Path.cwd()])
    except UnknownTrainableError as error:
        message = str(error)
        if not spec_given:
            message = message.replace(_BESIDE_THE_SPEC, _NAME_THE_FOLDER)
        raise SpecError([Problem("trainable", message)]) from None
    schema = definition.config_model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"{reference} parameters"
    schema["x-caviar-metrics"] = dict(definition.metrics)
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec, generated from the models (editors complete from it)."""
    schema = SweepSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "caviar sweep spec"
    return schema
