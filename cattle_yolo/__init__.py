"""cattle_yolo: a ResNet18 + YOLOv8-head cattle detector and its training loop."""
