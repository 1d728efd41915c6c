"""The steps of Caffe's examples/00-classification notebook, as a script: load a net and its weights,
set up the Transformer, classify one image; then the same with caffe.Classifier. Unchanged pycaffe code
but for the import line (run from a folder holding deploy.prototxt, weights.caffemodel, mean.npy,
labels.txt and image.png)."""
import numpy as np

import vggtool.pycaffe as caffe

caffe.set_mode_cpu()

model_def = 'deploy.prototxt'
model_weights = 'weights.caffemodel'

net = caffe.Net(model_def,      # defines the structure of the model
                model_weights,  # contains the trained weights
                caffe.TEST)     # use test mode (e.g., don't perform dropout)

# load the mean image for subtraction
mu = np.load('mean.npy')
mu = mu.mean(1).mean(1)  # average over pixels to obtain the mean (BGR) pixel values
print('mean-subtracted values:', list(zip('BGR', mu)))

# create transformer for the input called 'data'
transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})

transformer.set_transpose('data', (2, 0, 1))     # move image channels to outermost dimension
transformer.set_mean('data', mu)                 # subtract the dataset-mean value in each channel
transformer.set_raw_scale('data', 255)           # rescale from [0, 1] to [0, 255]
transformer.set_channel_swap('data', (2, 1, 0))  # swap channels from RGB to BGR

# set the size of the input (we can skip this if we're happy
#  with the default; we can also change it later, e.g., for different batch sizes)
net.blobs['data'].reshape(50,        # batch size
                          3,         # 3-channel (BGR) images
                          16, 16)    # image size is 16x16

image = caffe.io.load_image('image.png')
transformed_image = transformer.preprocess('data', image)

# copy the image data into the memory allocated for the net
net.blobs['data'].data[...] = transformed_image

### perform classification
output = net.forward()

output_prob = output['prob'][0]  # the output probability vector for the first image in the batch

print('predicted class is:', output_prob.argmax())

labels = np.loadtxt('labels.txt', str, delimiter='\t')
print('output label:', labels[output_prob.argmax()])

# sort top five predictions from softmax output
top_inds = output_prob.argsort()[::-1][:5]  # reverse sort and take five largest items
print('probabilities and labels:', list(zip(output_prob[top_inds], labels[top_inds])))

# for each layer, show the output shape
for layer_name, blob in net.blobs.items():
    print(layer_name + '\t' + str(blob.data.shape))
for layer_name, param in net.params.items():
    print(layer_name + '\t' + str(param[0].data.shape), str(param[1].data.shape))

classifier = caffe.Classifier(model_def, model_weights, image_dims=(20, 20), mean=mu, raw_scale=255,
                              channel_swap=(2, 1, 0))
prediction = classifier.predict([image])  # 10 crops, averaged
print('Classifier predicts:', labels[prediction[0].argmax()], 'probabilities', prediction[0].round(4))
