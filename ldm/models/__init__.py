"""The networks: the autoencoder (load, encode, decode, build) and the class-conditional UNet presets."""
