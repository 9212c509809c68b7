"""What is evaluated: samples, task configs, dataset formats, shipped resources, pixels, class groups."""
