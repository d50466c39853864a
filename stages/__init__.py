"""Fashion-MNIST pipeline: one entry point per DVC stage plus the shared modules they use."""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m stages.<stage>` is importing this package before the stage module
    # Importing torch takes seconds; Ctrl-C or SIGTERM then is one line, not a KeyboardInterrupt traceback.
    from stages.errors import install_startup_handlers

    install_startup_handlers()
