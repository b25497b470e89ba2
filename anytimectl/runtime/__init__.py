"""The runtime every method and backend shares: becoming an MPI job (`launch`), the run shell (`shell`: roles,
start-up agreement, signals, failure marking), the run directory and what is written to it (`rundir`, `records`,
`recorder`, `tensorboard_events`, `checkpoints`), the live view (`live`), the timing words (`round_clock`,
`step_reports`), the typed run config (`run_config`), the engine contract (`engine`), evaluation, stragglers,
learning-rate schedules, what killed ranks leave behind (`leftovers`), the results table (`run_table`), the install
checks (`doctor`) and the kinds of failure (`errors`). It knows no method: protocols declare what differs.
"""
