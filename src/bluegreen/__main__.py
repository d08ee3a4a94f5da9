from bluegreen.cli import main

# The same name (and completion variable, _BLUEGREEN_COMPLETE) as the `bluegreen` script.
main(prog_name="bluegreen")
