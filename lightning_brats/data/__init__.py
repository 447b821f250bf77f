"""The BraTS data pipeline: reader -> preprocessing cache -> sampler -> datamodule."""
