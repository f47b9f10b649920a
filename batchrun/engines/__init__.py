"""Running a job: the pipeline every engine drives (rows -> requests -> dispatcher ->
checkpoint), what every engine shares (preparing a run, its options, summary and exit
code), the local engine and the event loop; the Ray engine is the ``ray`` subpackage.

Hands a ``RunSummary`` to the runner, the facade and the command line.
"""
