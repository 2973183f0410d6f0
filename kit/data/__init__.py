"""Competition-format datasets: synthetic data (`synth`), real images (`importer`), the patient-isolated
stratified shard assignment both share (`shards`) and the one TFRecord folder writer (`tfrecords`).
Nothing is imported here, so `import kit.data` stays cheap (TensorFlow loads only when records are written)."""
