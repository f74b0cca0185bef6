"""`cripy ctl`'s verbs, one module per group (runtime, images, pods, containers, stats, streams); each module's
`register` adds its verbs and their flags to the command line."""
