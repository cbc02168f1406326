"""`humove smpl …`: one-time tools for the user's SMPL files (registered by the main CLI as `humove smpl`)."""

from __future__ import annotations

from pathlib import Path

import typer

smpl_app = typer.Typer(
    help="SMPL body-model files: convert official pickles to plain numpy.", no_args_is_help=True
)


@smpl_app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="official SMPL pickle, e.g. SMPL_NEUTRAL.pkl"),
    dst: Path = typer.Argument(..., help="output .npz, e.g. ~/.humove/smpl/SMPL_NEUTRAL.npz"),
) -> None:
    """Convert an official SMPL pickle (chumpy inside) to a plain-numpy .npz once; chumpy is not needed."""
    from humove.motion.body_model import load_smpl_file
    from humove.motion.convert import convert_smpl

    try:
        out = convert_smpl(src, dst)
        model = load_smpl_file(out)  # prove the result loads and runs through smplx
    except (OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1) from err
    typer.echo(f"wrote {out} ({model.name}, {model.smpl.get_num_verts()} vertices)")


@smpl_app.command("info")
def info(path: Path = typer.Argument(..., help="converted .npz")) -> None:
    """Print the arrays of a converted SMPL file."""
    import zipfile

    import numpy as np

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {path}: {message}", err=True)
        return typer.Exit(code=2)

    if not path.is_file():
        raise fail("no such file")
    if path.suffix.lower() == ".pkl":
        raise fail("an official SMPL pickle; convert it first with `humove smpl convert SRC DST.npz`")
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):  # a bare .npy array
            raise fail("not a converted .npz (it holds a single array)")
        with data:
            lines = [f"{key:14s} {data[key].dtype} {data[key].shape}" for key in data.files]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise fail(f"not a readable .npz ({reason})") from err
    for line in lines:
        typer.echo(line)
