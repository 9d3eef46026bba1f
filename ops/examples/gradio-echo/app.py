import os

import gradio as gr


def echo(text: str) -> str:
    return f"{os.environ.get('SPACE_ID', 'local')}: {text}"


demo = gr.Interface(fn=echo, inputs="text", outputs="text", title="Gradio Echo")

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), server_port=7860)
