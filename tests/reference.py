"""REFERENCE.md figures: trainable parameters and conv+linear MACs at each model's native resolution."""

REFERENCE = {
    "efficientnet-b0": (5_288_548, 385_814_752),
    "efficientnet-b1": (7_794_184, 686_802_832),
    "efficientnet-b2": (9_109_994, 993_561_872),
    "efficientnet-b3": (12_233_232, 1_827_141_392),
    "efficientnet-b4": (19_341_616, 4_393_771_024),
    "efficientnet-b5": (30_389_784, 10_266_384_752),
    "efficientnet-b6": (43_040_704, 19_067_593_536),
    "efficientnet-b7": (66_347_960, 37_745_884_192),
    "efficientnetv2-b0": (7_139_704, 718_086_176),
    "efficientnetv2-b1": (8_141_052, 1_196_819_360),
    "efficientnetv2-b2": (10_096_086, 1_697_542_832),
    "efficientnetv2-b3": (14_358_406, 3_011_458_816),
    "efficientnetv2-s": (21_458_488, 8_365_617_152),
    "efficientnetv2-m": (54_139_356, 24_582_460_384),
    "efficientnetv2-l": (118_515_272, 56_079_699_008),
}
