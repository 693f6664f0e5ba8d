"""How a setting is declared: ``setting(default, help, ...)`` fields, their flat names, and
``FlatConfig``, the flat-name construction and access every config class shares.

The command-line flags (``trainers/flags.py``) are generated from these declarations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator


def setting(default, help: str, *, choices=None, applies_to=None, recipe: bool = False):
    """Declares one setting: a dataclass field whose metadata the flags are generated from.

    Args:
      default: the value when nothing sets it (for ``recipe`` settings, CIFAR-10's Adv-BNN one).
      help: one line for ``--help``.
      choices: the accepted values of a string setting (the flag is then an enum).
      applies_to: the defenses that read the setting; None: all of them.
      recipe: the flag's default is the recipe's value for the run's dataset and defense.
    """
    metadata = {"help": help, "choices": choices, "applies_to": applies_to, "recipe": recipe}
    return dataclasses.field(default=default, metadata=metadata)


def section(cls):
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared setting as seen from outside: its path, flat name and declaration."""

    path: str
    name: str
    field: dataclasses.Field

    @property
    def help(self) -> str:
        return self.field.metadata["help"]

    @property
    def choices(self):
        return self.field.metadata["choices"]

    @property
    def applies_to(self):
        return self.field.metadata["applies_to"]

    @property
    def recipe(self) -> bool:
        return self.field.metadata["recipe"]

    @property
    def default(self):
        return self.field.default

    @property
    def type(self) -> str:
        """The annotation as written, e.g. ``"int | None"`` or ``"tuple[float, ...]"``."""
        return str(self.field.type)


def settings_of(cls, prefix: str = "") -> Iterator[Setting]:
    """Every declared setting of the config class ``cls``, sections flattened, in order."""
    for field in dataclasses.fields(cls):
        section = field.metadata.get("section")
        if section is not None:
            yield from settings_of(section, f"{prefix}{field.name}.")
        elif "help" in field.metadata:
            yield Setting(f"{prefix}{field.name}", field.name, field)


class FlatConfig:
    """Flat-name construction and access for a config class (sections optional)."""

    @classmethod
    def flat_names(cls) -> tuple[str, ...]:
        return tuple(s.name for s in settings_of(cls)) + cls._plain_names()

    @classmethod
    def _plain_names(cls) -> tuple[str, ...]:
        """Fields declared without ``setting`` (a TrainConfig's model_dir)."""
        return tuple(
            f.name
            for f in dataclasses.fields(cls)
            if "help" not in f.metadata and "section" not in f.metadata
        )

    @classmethod
    def path_of(cls, name: str) -> str:
        """The path of the flat name ``name`` (``"alpha"`` -> ``"objective.alpha"``)."""
        for setting_ in settings_of(cls):
            if setting_.name == name:
                return setting_.path
        return name

    @classmethod
    def from_flat(cls, **values):
        """The config whose fields take ``values`` (flat names); the others keep defaults."""
        unknown = sorted(set(values) - set(cls.flat_names()))
        if unknown:
            raise ValueError(f"{cls.__name__} has no fields {unknown}")
        arguments = {}
        for field in dataclasses.fields(cls):
            section = field.metadata.get("section")
            if section is not None:
                names = {f.name for f in dataclasses.fields(section)}
                arguments[field.name] = section(**{k: v for k, v in values.items() if k in names})
            elif field.name in values:
                arguments[field.name] = values[field.name]
        return cls(**arguments)

    def flat(self) -> dict:
        """Every field by its flat name."""
        values = {name: getattr(self, name) for name in self._plain_names()}
        for setting_ in settings_of(type(self)):
            values[setting_.name] = self.get(setting_.path)
        return values

    def get(self, path: str):
        """The value at ``path`` (``"objective.alpha"``) or of a flat name."""
        value = self
        for part in self.path_of(path).split("."):
            value = getattr(value, part)
        return value

    def replace(self, **values):
        """A copy with the fields of ``values`` (flat names) replaced."""
        return type(self).from_flat(**{**self.flat(), **values})
