"""Pictures for the user: training previews' labels and schedule, loss curves, the sweep's plot."""
