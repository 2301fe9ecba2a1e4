"""Deployment of the cloud side: Lambda packaging."""
