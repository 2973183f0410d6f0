"""Running kernels on this machine.

Modules, bottom up: `folders` (runs/<exp>/v<N>/ and run.json), `notebook_runner` (executes a notebook
kernel; run as `python -m kit.run.notebook_runner`), `local` (runs a rendered kernel in a subprocess),
`experiment` (render + run + check one experiment: `kit run`), `preflight` (the rehearsal on the target's
simulated topology before a push), `baseline` (the colour-statistics floor run). Nothing is imported here.
"""
