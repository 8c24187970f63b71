"""Griffe extension: the repository's four top folders form ONE import namespace.

pyproject.toml maps `cache/`, `keras_layers/` and `torch_transforms/` to `sr_augment.cache`,
`sr_augment.keras_layers` and `sr_augment.torch_transforms` (setuptools `package-dir`). Griffe's
static finder only looks inside `sr_augment/`, so this attaches those folders to the `sr_augment`
package while it is visited; `::: sr_augment.cache.SRCache` then resolves as it imports.
"""

from __future__ import annotations

from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parents[1]  # the repository root: this file is docs/griffe_layout.py
MAPPED = {"cache": ROOT / "cache", "keras_layers": ROOT / "keras_layers", "torch_transforms": ROOT / "torch_transforms"}


class PackageDirLayout(griffe.Extension):
    def on_module_members(self, *, mod: griffe.Module, agent, **kwargs) -> None:
        if mod.path != "sr_augment":
            return
        for name, folder in MAPPED.items():
            if name in mod.members and not mod.members[name].is_alias:
                continue
            package = self._visit(name, folder / "__init__.py", mod, agent)
            for path in sorted(folder.glob("*.py")):
                if path.name != "__init__.py":
                    package.set_member(path.stem, self._visit(path.stem, path, package, agent))
            mod.set_member(name, package)

    @staticmethod
    def _visit(name: str, path: Path, parent: griffe.Module, agent) -> griffe.Module:
        return griffe.visit(name, path, path.read_text(encoding="utf-8"), extensions=agent.extensions, parent=parent,
                            docstring_parser=agent.docstring_parser, docstring_options=agent.docstring_options,
                            lines_collection=agent.lines_collection, modules_collection=agent.modules_collection)
