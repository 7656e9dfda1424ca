"""Evaluation: FID / KID, mIoU, mask statistics, the downstream experiment and the report."""
