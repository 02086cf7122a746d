"""Tests of the control plane: registry, REST admin API, migrations, durability."""
