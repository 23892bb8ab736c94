"""Stage 07: do stage 06's models keep their quality and ranking on other data sets (entry point: ``stage.run_stage``)."""
