"""The ``qorus`` command line."""

from __future__ import annotations

import json

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qorus-jit", prog_name="qorus")
def main():
    """Qorus: train and run small transformers and MLPs on a CPU, on numba-compiled kernels."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(as_json):
    """Show versions, threads, CPU/SIMD features, BLAS and the numba cache location."""
    from qorus_jit.sysinfo import collect

    data = collect()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    v, t, c = data["versions"], data["threads"], data["cpu"]
    click.echo("Qorus " + v["qorus_jit"])
    click.echo("  versions:   " + ", ".join(f"{k} {val}" for k, val in v.items() if k != "qorus_jit"))
    click.echo(f"  threads:    numba {t['numba_threads']} of {t['numba_max_threads']} "
               f"(threading layer: {t['numba_threading_layer']}), {t['cpu_count']} CPUs")
    click.echo(f"  cpu:        {c['model']} (LLVM target {c['llvm_target']})")
    click.echo(f"  simd:       {' '.join(c['simd']) or 'none'}")
    for lib in data["blas"]:
        click.echo(f"  blas:       {lib['used_by']}: {lib['library']} {lib['version']} "
                   f"({lib['architecture']}, {lib['threads']} threads)")
    click.echo(f"  cache:      {data['numba_cache']}")
    click.echo(f"  fastmath:   {' '.join(data['fastmath'])}")


@main.command("clear-cache")
def clear_cache():
    """Delete the compiled kernels numba cached for qorus_jit (they recompile on next use)."""
    from qorus_jit.sysinfo import clear_kernel_cache

    n, where = clear_kernel_cache()
    click.echo(f"removed {n} cached kernel files from {where}")


if __name__ == "__main__":
    main()
