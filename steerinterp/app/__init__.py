"""The application: the main job, the analyses of a run, the HTML report, figures on disk, the command line.

    pipeline.py  analyze_vectors (the demo's analyses of a trained set), save_analysis, build_report
    demo.py      run_demo / write_demo: train, evaluate, analyse on the embedded model
    report.py    render_report: a self-contained HTML page
    figures.py   write_figure: a plotly figure as HTML
    cli.py       steerinterp demo | train | eval | generate | analyze | report

Run files are read and written through ``steerinterp.run_dir.RunDir``. Nothing below this room imports it.
"""
