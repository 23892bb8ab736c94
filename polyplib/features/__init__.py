"""What several stages compute from images and none owns: the FID Inception features and weights, shared linear algebra."""
