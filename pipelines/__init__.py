"""Pipeline definitions shipped with humove (`humove.pipelines`): demo.yaml, humove.yaml."""
