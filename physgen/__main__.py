"""``python -m physgen`` (the same as the ``physgen`` console script); it is what
``torchrun --nproc-per-node N -m physgen train ...`` runs on every rank."""

from physgen.cli import main

if __name__ == "__main__":
    main()
