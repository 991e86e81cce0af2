"""Hand-designed detectors reproduced as baselines (FANet, RSA), built from their own
catalogue entries (backbones, necks, heads, losses) like every searched family."""
