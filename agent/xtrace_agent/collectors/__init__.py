"""Sources: each mode's reader of the kernel or sysfs (stages.Source; which one runs is pipeline.MODES)."""
