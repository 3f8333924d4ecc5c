"""`jdiffseg predict`: masks, class probabilities and uncertainty of a trained run for new,
unlabelled images, written per case at the input's own size."""
