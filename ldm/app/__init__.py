"""The Gradio app: blocks per tab, thin handlers into the library, settings, worker jobs, the workspace."""
