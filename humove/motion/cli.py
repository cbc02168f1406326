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
    gender: str | None = typer.Option(None, help="neutral | female | male (default: from DST's file name)"),
) -> None:
    """Convert an official SMPL pickle (chumpy inside) once, without chumpy: a plain-numpy .npz for humove, and
    DST's folder/smpl/SMPL_{GENDER}.pkl that `smplx.create(DST's folder, model_type="smpl")` loads."""
    from humove.motion.body_model import load_smpl_file
    from humove.motion.convert import convert_smpl, gender_of, smplx_pickle_path

    if gender is not None and gender.lower() not in ("neutral", "female", "male"):
        typer.echo(f"error: --gender {gender!r}: choose neutral, female or male", err=True)
        raise typer.Exit(code=1)
    try:
        out = convert_smpl(src, dst, gender=gender)
        model = load_smpl_file(out, name=f"smpl-{(gender or gender_of(out)).lower()}")  # it loads and runs
    except (OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1) from err
    typer.echo(f"wrote {out} ({model.name}, {model.smpl.get_num_verts()} vertices)")
    typer.echo(f"wrote {smplx_pickle_path(out, gender)} (for smplx: smplx.create({str(out.parent)!r}, "
               f"model_type='smpl', gender={(gender or gender_of(out)).lower()!r}))")


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
