"""The model plumbing every room shares: loading teachers and students with a task's head,
student initialisation from teacher layers, the inputs a forward accepts (``models``), and the pure
distillation and hard losses over [batch, heads, classes] logits (``losses``). The bottom layer
under the tasks: it imports nothing of raykd but raykd.errors, so the tasks (heads, hard loss,
the one forward pass) and training, serving and the study cache above them can all use it.
"""
