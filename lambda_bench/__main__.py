import sys

from .cli import main

# guarded: a Dask local cluster starts its workers with multiprocessing's spawn, which imports the
# main module again in each worker
if __name__ == "__main__":
    sys.exit(main())
