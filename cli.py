from robustmtl.cli import app

app()
