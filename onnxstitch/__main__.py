"""``python -m onnxstitch`` runs the command line."""

from onnxstitch.cli import main

if __name__ == "__main__":
    main()
