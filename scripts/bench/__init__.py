"""The benchmark behind scripts/bench.py, one job per module.

    common    paths, CPU layout, candidate names, the two error kinds, log()
    procs     processes this run starts (Child) and how they are stopped
    procfs    accounting read from /proc: CPU seconds, RSS, descriptors, wake-ups, TCP sockets
    net       loopback helpers: free ports, readiness polls, one HTTP GET
    backends  the two nginx HTTP backends (scripts/nginx-backend.conf.in) and the iperf3 server
    peers     the candidates: shunt, HAProxy (three splice modes), nginx stream, direct
    load      wrk, iperf3 and the idle-connection holder, with their output parsers
    strace    system calls per response (strace -c) and its parser
    stats     medians and number formatting shared by the log, the report and the plot
    figures   what each figure measures, the metrics reported, the run loop
    scaling   the 2-worker part: held connections plus wrk on top
    report    results.md / scaling.md and the files written to --out
    plot      scaling.png through gnuplot
    cli       arguments, settings, machine facts, main()
    dryrun    --dry-run: every config, parser and renderer checked without load
    samples   what the dry run feeds instead: known tool outputs, synthetic results

Python standard library only. Importing the package starts nothing.
"""
