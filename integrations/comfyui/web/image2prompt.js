// Shows what an image2prompt node returned ({"ui": {"text": [...]}}) in a read-only box on the node.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const BOX = "image2prompt_output";

app.registerExtension({
  name: "image2prompt.ShowText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("Image2Prompt|")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      let box = this.widgets?.find((w) => w.name === BOX);
      if (!box) {
        box = ComfyWidgets.STRING(this, BOX, ["STRING", { multiline: true }], app).widget;
        box.inputEl.readOnly = true;
        box.inputEl.style.opacity = 0.75;
        box.serialize = false; // output, not an input: not saved in the workflow
      }
      box.value = (message?.text ?? []).join("\n\n----\n\n");
      const [w, h] = this.computeSize();
      this.setSize([Math.max(w, this.size[0]), Math.max(h, this.size[1])]);
      app.graph.setDirtyCanvas(true, false);
    };
  },
});
