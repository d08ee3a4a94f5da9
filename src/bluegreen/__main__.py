from bluegreen.launch import main

# `python -m bluegreen` is the `bluegreen` script: a warm process (`bluegreen warm`) if one
# runs, else this process.
main()
