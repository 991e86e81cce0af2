"""Each search space's glue, one module per space, every one of the same shape:

    PRESET         PresetRules: where its built-in presets are, their keys and budget keys
    resolve        (preset, budget section, options) -> the resolved search config
    derive         keys that follow from others, once `--set` is applied
    check          an infeasible request is a UserError before anything is written
    phases         the driver's phases: plans and trial functions
    trial_recipe   the recipe its trials train with (budget layers applied)
    add_arguments  its own `facenas search` options
    ENTRY          the SpaceEntry nas/space_table.py lists

This package's __init__ imports none of them (nas/space_table.py does), so a space module
never pulls in the table.
"""
