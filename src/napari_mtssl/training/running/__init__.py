"""Running a run: the pipeline that schedules a plan's units over a workspace, the executors
that train them (in this process, in worker processes, on a Ray cluster), the job runner that
keeps a long generator in its own process, and the models runs saved.

Nothing is imported here: ``running.jobs`` and ``running.saved`` stay cheap for the viewer.
"""
